/**
 * Makes every `function` of the CLI's bundle compile while the bundle loads,
 * so that Deno's code cache holds it. V8 compiles a function when it is
 * first called, except a function expression written right after `(`,
 * which it compiles at once (its guess that the function is called at
 * once); and Deno caches only the code compiled while a module is being
 * evaluated. A cold `netlock lock PID` otherwise compiles its own code
 * function by function, call by call (docs/benchmarks.md).
 *
 * So, in the minified bundle (`deno bundle --minify` drops the parentheses
 * a source could carry):
 * - a function expression is put in parentheses: `f=function(){}` becomes
 *   `f=(function(){})`;
 * - a function declaration becomes a `var` (at the top of a function body or
 *   of the file) or a `let` (in a block) assigned at the top of its scope,
 *   where the declaration would have been hoisted, in their order:
 *   `{a();function b(){}}` becomes `{let b=(function b(){});a();}`.
 *
 * Arrow functions stay as they are (V8 has no such guess for them). The
 * scan knows strings, templates, comments and regular expressions; what it
 * does not understand (a declaration in a `switch` case) is an error: the
 * bundle then fails to build, it is never half rewritten.
 *
 * @module
 */

interface Token {
  kind: "punct" | "name" | "number" | "string" | "template" | "regex";
  text: string;
  start: number;
  end: number;
}

/** Keywords after which a `/` starts a regular expression. */
const BEFORE_REGEX = new Set([
  "return",
  "typeof",
  "case",
  "do",
  "else",
  "in",
  "of",
  "new",
  "delete",
  "void",
  "throw",
  "instanceof",
  "yield",
  "await",
]);

/** Keywords whose `(...)` a statement follows: a `{` after it is a block. */
const STATEMENT_HEADS = new Set(["if", "for", "while", "switch", "catch", "with"]);

const PUNCTUATORS = [
  ">>>=",
  "...",
  "===",
  "!==",
  "**=",
  "<<=",
  ">>=",
  ">>>",
  "&&=",
  "||=",
  "??=",
  "=>",
  "==",
  "!=",
  "<=",
  ">=",
  "&&",
  "||",
  "??",
  "?.",
  "++",
  "--",
  "+=",
  "-=",
  "*=",
  "/=",
  "%=",
  "&=",
  "|=",
  "^=",
  "**",
  "<<",
  ">>",
];

/**
 * The bundle with its functions compiled as it loads (see the module's
 * documentation).
 *
 * @example
 * ```ts
 * import { eagerFunctions } from "./eager.ts";
 *
 * console.log(eagerFunctions("a();function a(){return 1}"));
 * // var a=(function a(){return 1});a();
 * ```
 *
 * @param source The minified bundle (an ES module).
 * @returns The same module, its functions eagerly compiled.
 * @throws {Error} Where the scan cannot tell what the code is.
 */
export function eagerFunctions(source: string): string {
  const tokens = tokenize(source);
  const close = matchBrackets(tokens);
  const open = new Map<number, number>();
  for (const [o, c] of close) open.set(c, o);

  /** The significant token before `i`, if any. */
  const before = (i: number): Token | undefined => tokens[i - 1];

  /** The `(...)` a `{` at `i` follows: the token before its `(`, and the one before that. */
  const parenHead = (i: number): [Token | undefined, Token | undefined] => {
    if (before(i)?.text !== ")") return [undefined, undefined];
    const paren = open.get(i - 1)!;
    return [before(paren), before(paren - 1)];
  };
  /** Whether the `{` at `i` opens a function's body (not a block). */
  const isBody = (i: number): boolean => {
    if (before(i)?.text === "=>") return true;
    if (before(i)?.text !== ")") return false;
    const [head, earlier] = parenHead(i);
    // `for await (...) {`: a loop's block too.
    if (head?.text === "await" && earlier?.text === "for") return false;
    return !(head?.kind === "name" && STATEMENT_HEADS.has(head.text));
  };
  const isSwitchBody = (i: number): boolean => parenHead(i)[0]?.text === "switch";

  interface Frame {
    /** "scope": a `{...}` or the file; "fn": a function being rewritten. */
    kind: "scope" | "fn";
    /** The token that ends the frame. */
    last: number;
    out: string[];
    /** Scope: the declarations hoisted to its top, and where they go. */
    hoisted: string[];
    word?: "var" | "let";
    switchBody?: boolean;
    /** Function: its declared name, when a declaration. */
    declares?: string;
  }
  const file: Frame = { kind: "scope", last: tokens.length, out: [], hoisted: [], word: "var" };
  const frames: Frame[] = [file];
  const top = (): Frame => frames[frames.length - 1];
  const scope = (): Frame => frames.findLast((frame) => frame.kind === "scope")!;

  let at = 0;
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i];
    top().out.push(source.slice(at, token.start));
    at = token.start;
    const fn = functionAt(tokens, close, i);
    if (fn !== undefined) {
      const body = fn.body;
      const last = close.get(body);
      if (last === undefined) throw new Error(`eager: no body for the function at ${token.start}`);
      const prev = before(i);
      const statement = prev === undefined || [";", "{", "}"].includes(prev.text);
      if (prev?.text === ":" && fn.name !== undefined && scope().switchBody) {
        throw new Error(`eager: a function declared in a switch case at ${token.start}`);
      }
      if (statement && fn.name === undefined) {
        throw new Error(`eager: a nameless function declaration at ${token.start}`);
      }
      frames.push({
        kind: "fn",
        last,
        out: [],
        hoisted: [],
        declares: statement ? fn.name : undefined,
      });
    }
    if (token.text === "{" && token.kind === "punct") {
      const body = isBody(i);
      frames.push({
        kind: "scope",
        last: close.get(i)!,
        out: [],
        hoisted: [],
        word: body ? "var" : "let",
        switchBody: isSwitchBody(i),
      });
    }
    top().out.push(source.slice(token.start, token.end));
    at = token.end;
    // Close what ends here: the innermost first (a body, then its function).
    while (frames.length > 1 && top().last === i) {
      const frame = frames.pop()!;
      if (frame.kind === "scope") {
        const [brace, ...rest] = frame.out;
        if (frame.hoisted.length > 0 && frame.switchBody) {
          throw new Error(`eager: a function declared in a switch case, before ${token.start}`);
        }
        top().out.push(brace, ...frame.hoisted, ...rest);
        continue;
      }
      const text = frame.out.join("");
      if (frame.declares === undefined) {
        top().out.push(`(${text})`);
      } else {
        const home = scope();
        home.hoisted.push(`${home.word} ${frame.declares}=(${text});`);
      }
    }
  }
  top().out.push(source.slice(at));
  if (frames.length !== 1) throw new Error("eager: unbalanced brackets at the end of the bundle");
  // The file's own declarations go after its leading comments.
  const text = file.out.join("");
  const head = text.match(/^(?:\s*(?:\/\/[^\n]*\n|\/\*[\s\S]*?\*\/))*\s*/)![0];
  const eager = head + file.hoisted.join("") + text.slice(head.length);
  // The result scans again, with as many functions, each after a `(`.
  const again = tokenize(eager);
  matchBrackets(again);
  const functions = (list: Token[]) =>
    list.flatMap((t, k) => t.text === "function" && list[k - 1]?.text !== "." ? [k] : []);
  const after = functions(again);
  const opened = (k: number) =>
    again[k - 1]?.text === "(" || (again[k - 1]?.text === "async" && again[k - 2]?.text === "(");
  if (after.length !== functions(tokens).length || !after.every(opened)) {
    throw new Error("eager: the rewritten bundle does not scan as expected");
  }
  return eager;
}

/** A function that starts at token `i` (`function` or `async function`); `close`: the brackets' pairs. */
function functionAt(
  tokens: Token[],
  close: Map<number, number>,
  i: number,
): { name?: string; body: number } | undefined {
  let j = i;
  if (tokens[j].kind !== "name") return undefined;
  if (tokens[j].text === "async" && tokens[j + 1]?.text === "function") j++;
  if (tokens[j].text !== "function") return undefined;
  // `async` itself was the start: its `function` is not one more.
  if (j === i && tokens[i - 1]?.text === "async") return undefined;
  // A property named `function` (`x.function`, `{function: 1}`) is no function.
  if (tokens[i - 1]?.text === "." || tokens[i - 1]?.text === "?.") return undefined;
  j++;
  if (tokens[j]?.text === "*") j++;
  let name: string | undefined;
  if (tokens[j]?.kind === "name") name = tokens[j++].text;
  if (tokens[j]?.text !== "(") return undefined;
  const parameters = close.get(j);
  if (parameters === undefined || tokens[parameters + 1]?.text !== "{") return undefined;
  return { name, body: parameters + 1 };
}

/** Each opening bracket's token index to its closing one's. */
function matchBrackets(tokens: Token[]): Map<number, number> {
  const pairs = new Map<number, number>();
  const stack: number[] = [];
  const partner: Record<string, string> = { ")": "(", "]": "[", "}": "{" };
  for (const [i, token] of tokens.entries()) {
    if (token.kind !== "punct") continue;
    if (token.text === "(" || token.text === "[" || token.text === "{") stack.push(i);
    else if (token.text in partner) {
      const o = stack.pop();
      if (o === undefined || tokens[o].text !== partner[token.text]) {
        throw new Error(`eager: unmatched ${token.text} at ${token.start}`);
      }
      pairs.set(o, i);
    }
  }
  if (stack.length > 0) throw new Error("eager: unclosed brackets");
  return pairs;
}

/**
 * The tokens of `source`, comments and white space left out. A template is
 * one token per piece (`` `a${ `` ... `}b` ``), its substitutions tokens of
 * their own between them.
 */
function tokenize(source: string): Token[] {
  const tokens: Token[] = [];
  // Per open `{` or `${`: whether it is a template's substitution.
  const braces: boolean[] = [];
  // Per open `(`: the token before it (to tell `if(...)/re/` from `(a)/2`).
  const parens: (Token | undefined)[] = [];
  let i = 0;
  const push = (kind: Token["kind"], end: number): void => {
    tokens.push({ kind, text: source.slice(i, end), start: i, end });
    i = end;
  };
  const template = (from: number): number => {
    // From just after "`" or "}": to just after "`" or "${".
    let j = from;
    while (j < source.length) {
      const c = source[j];
      if (c === "\\") j += 2;
      else if (c === "`") return j + 1;
      else if (c === "$" && source[j + 1] === "{") {
        braces.push(true);
        return j + 2;
      } else j++;
    }
    throw new Error("eager: unterminated template");
  };
  let lastParen: Token | undefined;
  const regexAllowed = (): boolean => {
    const prev = tokens[tokens.length - 1];
    if (prev === undefined) return true;
    if (prev.kind === "name") {
      const property = tokens[tokens.length - 2]?.text === ".";
      return !property && BEFORE_REGEX.has(prev.text);
    }
    if (prev.kind !== "punct") return false;
    if (prev.text === ")") return lastParen?.kind === "name" && STATEMENT_HEADS.has(lastParen.text);
    return !["]", "++", "--"].includes(prev.text);
  };
  while (i < source.length) {
    const c = source[i];
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    if (c === "/" && source[i + 1] === "/") {
      const end = source.indexOf("\n", i);
      i = end === -1 ? source.length : end;
      continue;
    }
    if (c === "/" && source[i + 1] === "*") {
      const end = source.indexOf("*/", i + 2);
      if (end === -1) throw new Error("eager: unterminated comment");
      i = end + 2;
      continue;
    }
    if (c === '"' || c === "'") {
      let j = i + 1;
      while (j < source.length && source[j] !== c) {
        if (source[j] === "\n") throw new Error(`eager: a line break in a string at ${i}`);
        j += source[j] === "\\" ? 2 : 1;
      }
      push("string", j + 1);
      continue;
    }
    if (c === "`") {
      push("template", template(i + 1));
      continue;
    }
    if (c === "/" && regexAllowed()) {
      let j = i + 1;
      let inClass = false;
      while (j < source.length) {
        const d = source[j];
        if (d === "\n") throw new Error(`eager: a line break in a regular expression at ${i}`);
        if (d === "\\") j++;
        else if (d === "[") inClass = true;
        else if (d === "]") inClass = false;
        else if (d === "/" && !inClass) break;
        j++;
      }
      j++;
      while (/[a-z]/.test(source[j] ?? "")) j++;
      push("regex", j);
      continue;
    }
    const word = source.slice(i).match(/^#?[A-Za-z_$\u0080-\uffff][\w$\u0080-\uffff]*/);
    if (word) {
      push("name", i + word[0].length);
      continue;
    }
    const number = source.slice(i).match(
      /^(?:0[xXoObB][\da-fA-F_]+n?|(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d+)?n?)/,
    );
    if (number) {
      push("number", i + number[0].length);
      continue;
    }
    if (c === "}" && braces.pop() === true) {
      // The end of a template's substitution: the template goes on.
      push("template", template(i + 1));
      continue;
    }
    if (c === "{") braces.push(false);
    if (c === "(") parens.push(tokens[tokens.length - 1]);
    if (c === ")") lastParen = parens.pop();
    const long = PUNCTUATORS.find((p) => source.startsWith(p, i));
    push("punct", i + (long?.length ?? 1));
  }
  if (braces.includes(true)) throw new Error("eager: unterminated template");
  return tokens;
}
