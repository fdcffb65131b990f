/**
 * scripts/eager.ts: the bundle's functions rewritten to compile as it
 * loads. Each case runs the module before and after and compares what it
 * exported (the rewrite itself checks that every `function` of its result
 * follows a `(`).
 */
import assert from "node:assert/strict";
import { eagerFunctions } from "../scripts/eager.ts";

async function exported(code: string): Promise<unknown> {
  const module = await import(`data:text/javascript,${encodeURIComponent(code)}`);
  return module.result;
}

async function sameBehaviour(code: string): Promise<string> {
  const eager = eagerFunctions(code);
  assert.deepEqual(await exported(eager), await exported(code));
  return eager;
}

Deno.test("eager: a declaration is assigned at the top of its scope, in order, as hoisted", async () => {
  const eager = await sameBehaviour(
    "const result=[a(),b()];function a(){return b()+1}function b(){return 1}export{result};",
  );
  assert.equal(
    eager,
    "var a=(function a(){return b()+1});var b=(function b(){return 1});const result=[a(),b()];export{result};",
  );
});

Deno.test("eager: a declaration in a block is a let of that block; in a body, a var", async () => {
  const eager = await sameBehaviour(
    "const result=[];{result.push(f());function f(){return 2}}" +
      "function g(e){return e();function e(){return 3}}result.push(g(()=>0));" +
      "if(result.length){result.push(h());function h(){return 4}}" +
      "for await(const x of [5]){result.push(k(x));function k(y){return y}}export{result};",
  );
  assert.match(eager, /for await\(const x of \[5\]\)\{let k=/);
  assert.match(eager, /\{let f=\(function f\(\)\{return 2\}\);result\.push\(f\(\)\);\}/);
  assert.match(eager, /function g\(e\)\{var e=\(function e\(\)\{return 3\}\);return e\(\);\}/);
});

Deno.test("eager: expressions are put in parentheses, names and recursion kept", async () => {
  const eager = await sameBehaviour(
    "const g=function h(n){return n?h(n-1)+1:0};const k=[1,2].map(function(x){return x*2});" +
      "const o={m:function(){return g.name}};" +
      "const result=[g(3),k,o.m(),typeof function(){},(function(){return 5})()];export{result};",
  );
  assert.match(eager, /const g=\(function h\(n\)/);
});

Deno.test("eager: async functions and generators", async () => {
  await sameBehaviour(
    "async function a(){return 1}const b=async function(){return await a()+1};" +
      "function*c(){yield 1;yield 2}" +
      "const result=[await a(),await b(),[...c()],c.constructor.name];export{result};",
  );
});

Deno.test("eager: strings, templates, comments and regular expressions are not code", async () => {
  const eager = await sameBehaviour(
    'const s="function x(){",q=\'}{\';/* function y(){ */const u="\\"}";' +
      "const t=`{${s}}${`function ${q}`}`;// function z(){\n" +
      'const r=/function\\s*\\{[}/]/.test("function {}"),d=(8)/2/2;let w=0;' +
      'if(d)/x/.test("x")&&w++;function f(){return`}`}' +
      "const result=[s,q,u,t,r,d,w,f(),[1].map(function(){return/}/.source})];export{result};",
  );
  assert.equal(eager.match(/\(function/g)?.length, 2);
});

Deno.test("eager: what the scan cannot tell fails, never a half rewrite", () => {
  assert.throws(
    () => eagerFunctions("switch(1){case 1:function f(){}}"),
    /a function declared in a switch case/,
  );
  assert.throws(() => eagerFunctions("const a=`${1"), /unterminated template|unclosed/);
  assert.throws(() => eagerFunctions("f(}"), /unmatched/);
});
