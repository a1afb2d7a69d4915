// Safe Markdown for model output: builds DOM nodes with createElement + textContent only.
//
// The text is untrusted. Nothing here ever parses HTML: raw tags show as text, links are kept only
// for http(s) URLs, and images are never loaded (they become "[image: alt]"). The answer is
// re-rendered on every streamed chunk, so every construct must render sensibly when cut off:
// an unfinished ``` fence is code, an unclosed ** or ` is literal text until its closer arrives.

const MAX_DEPTH = 6; // nested quotes and lists beyond this render as paragraphs

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const QUOTE = /^ {0,3}>\s?/;
const BULLET = /^( *)([-*+])\s+(.*)$/;
const ORDERED = /^( *)(\d{1,9})[.)]\s+(.*)$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;

/**
 * Render Markdown text as a DocumentFragment of safe elements.
 * @param {string} text
 * @returns {DocumentFragment}
 */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  renderBlocks(lines, fragment, 0);
  return fragment;
}

function renderBlocks(lines, parent, depth) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
    } else if (FENCE.test(line)) {
      i = renderFence(lines, i, parent);
    } else if (HEADING.test(line)) {
      renderHeading(line, parent);
      i += 1;
    } else if (RULE.test(line)) {
      parent.append(document.createElement("hr"));
      i += 1;
    } else if (depth < MAX_DEPTH && QUOTE.test(line)) {
      i = renderQuote(lines, i, parent, depth);
    } else if (depth < MAX_DEPTH && listMarker(line)) {
      i = renderList(lines, i, parent, depth);
    } else {
      i = renderParagraph(lines, i, parent);
    }
  }
}

function renderFence(lines, start, parent) {
  const [, marker, lang] = lines[start].match(FENCE);
  const body = [];
  let i = start + 1;
  for (; i < lines.length; i += 1) {
    const close = lines[i].match(/^ {0,3}(`{3,}|~{3,})\s*$/);
    if (close && close[1][0] === marker[0] && close[1].length >= marker.length) {
      i += 1;
      break;
    }
    body.push(lines[i]);
  }
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  if (lang) code.className = `language-${lang.replace(/[^\w-]/g, "")}`;
  code.textContent = body.join("\n");
  pre.append(code);
  parent.append(pre);
  return i; // an unclosed fence runs to the end: while streaming, it is code so far
}

function renderHeading(line, parent) {
  const [, hashes, content] = line.match(HEADING);
  const level = Math.min(hashes.length, 3);
  const heading = document.createElement(`h${level}`);
  appendInline(heading, content);
  parent.append(heading);
}

function renderQuote(lines, start, parent, depth) {
  const inner = [];
  let i = start;
  while (i < lines.length && QUOTE.test(lines[i])) {
    inner.push(lines[i].replace(QUOTE, ""));
    i += 1;
  }
  const quote = document.createElement("blockquote");
  renderBlocks(inner, quote, depth + 1);
  parent.append(quote);
  return i;
}

function listMarker(line) {
  const bullet = line.match(BULLET);
  if (bullet) return { ordered: false, indent: bullet[1].length, start: 1, rest: bullet[3], width: bullet[1].length + 2 };
  const ordered = line.match(ORDERED);
  if (ordered) {
    const width = ordered[1].length + ordered[2].length + 2;
    return { ordered: true, indent: ordered[1].length, start: Number(ordered[2]), rest: ordered[3], width };
  }
  return null;
}

// Collect items of one list: a marker of the same kind at the same indent starts an item; indented
// lines (and blank lines followed by them) continue it. Each item's lines render recursively, which
// gives nested lists, quotes and code inside items for free.
function renderList(lines, start, parent, depth) {
  const first = listMarker(lines[start]);
  const list = document.createElement(first.ordered ? "ol" : "ul");
  if (first.ordered && first.start !== 1) list.start = first.start;
  const items = [];
  let i = start;
  while (i < lines.length) {
    const marker = listMarker(lines[i]);
    if (marker && marker.indent <= first.indent && marker.ordered === first.ordered) {
      items.push({ lines: [marker.rest], width: marker.width, loose: false });
      i += 1;
    } else if (lines[i].trim() && /^\s/.test(lines[i]) && items.length) {
      const item = items[items.length - 1];
      item.lines.push(dedent(lines[i], item.width));
      i += 1;
    } else if (!lines[i].trim() && i + 1 < lines.length && continuesList(lines[i + 1], first)) {
      items[items.length - 1].lines.push("");
      i += 1;
    } else {
      break;
    }
  }
  for (const item of items) list.append(renderItem(item, depth));
  parent.append(list);
  return i;
}

function continuesList(next, first) {
  const marker = listMarker(next);
  if (marker) return marker.indent > first.indent || (marker.indent <= first.indent && marker.ordered === first.ordered);
  return /^\s{2,}\S/.test(next);
}

function dedent(line, width) {
  const spaces = line.match(/^ */)[0].length;
  return line.slice(Math.min(spaces, width));
}

function renderItem(item, depth) {
  const li = document.createElement("li");
  const simple = item.lines.every((line) => line.trim() && !FENCE.test(line) && !QUOTE.test(line) && !listMarker(line));
  if (simple) {
    appendInline(li, item.lines.join("\n")); // a tight item: no <p> wrapper
  } else {
    renderBlocks(item.lines, li, depth + 1);
  }
  return li;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || QUOTE.test(line) || RULE.test(line) || Boolean(listMarker(line));
}

function renderParagraph(lines, start, parent) {
  const body = [lines[start]];
  let i = start + 1;
  while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) {
    body.push(lines[i]);
    i += 1;
  }
  const p = document.createElement("p");
  appendInline(p, body.map((line) => line.trim()).join("\n"));
  parent.append(p);
  return i;
}

// ---- inline -------------------------------------------------------------------------------------

const SPECIAL = /[\\`*_[!\n]|https?:\/\//g;
const IMAGE = /^!\[([^\]\n]*)\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"\n]*")?\s*\)/;
const LINK = /^\[((?:[^\][\n]|\[[^\]\n]*\])+)\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"\n]*")?\s*\)/;
const CITATION = /^\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\](?!\()/;
const BARE_URL = /^https?:\/\/[^\s<>()"']*[^\s<>()"'.,;:!?*_]/;
const STRONG_EM = /^(\*\*\*|___)(?=\S)([\s\S]*?\S)\1/;
const STRONG = /^(\*\*|__)(?=\S)([\s\S]*?\S)\1/;
const EMPHASIS = /^([*_])(?=[^\s*_])([\s\S]*?[^\s\\*_])\1(?![*\w])/;

/**
 * Append inline Markdown (code, emphasis, links, citation chips) to an element.
 * @param {Node} parent
 * @param {string} text
 * @param {boolean} [links=true] false inside a link's label: no nested anchors
 */
function appendInline(parent, text, links = true) {
  let plain = "";
  let i = 0;
  const flush = () => {
    if (plain) parent.append(document.createTextNode(plain));
    plain = "";
  };
  while (i < text.length) {
    SPECIAL.lastIndex = i;
    const found = SPECIAL.exec(text);
    const next = found ? found.index : text.length;
    plain += text.slice(i, next);
    i = next;
    if (i >= text.length) break;
    const token = inlineToken(text, i, links);
    if (token) {
      flush();
      parent.append(token.node);
      i += token.length;
    } else {
      plain += text[i];
      i += 1;
    }
  }
  flush();
}

function inlineToken(text, i, links) {
  const rest = text.slice(i);
  const ch = rest[0];
  if (ch === "\n") return { node: document.createElement("br"), length: 1 };
  if (ch === "\\" && /^\\[\\`*_[\]()#+\-.!>]/.test(rest)) return { node: document.createTextNode(rest[1]), length: 2 };
  if (ch === "`") return codeSpan(rest);
  if (ch === "!") return image(rest);
  if (ch === "[") return citation(rest) || link(rest, links);
  if (ch === "h") return links && wordStart(text, i) ? bareUrl(rest) : null; // SPECIAL matched "http(s)://"
  if (ch === "_" && !wordStart(text, i)) return null; // snake_case stays text
  return strongOrEmphasis(rest, links);
}

function wordStart(text, i) {
  return i === 0 || !/[\w/]/.test(text[i - 1]);
}

function codeSpan(rest) {
  const ticks = rest.match(/^`+/)[0];
  const end = rest.indexOf(ticks, ticks.length);
  if (end < 0) return { node: document.createTextNode(ticks), length: ticks.length }; // unclosed: literal
  const code = document.createElement("code");
  code.textContent = rest.slice(ticks.length, end).replace(/^ (.*) $/s, "$1");
  return { node: code, length: end + ticks.length };
}

function image(rest) {
  const match = rest.match(IMAGE);
  if (!match) return null;
  const span = document.createElement("span");
  span.className = "image-alt";
  span.textContent = `[image: ${match[1] || "no description"}]`;
  return { node: span, length: match[0].length };
}

function citation(rest) {
  const match = rest.match(CITATION);
  if (!match) return null;
  const group = document.createDocumentFragment();
  for (const number of match[1].split(",").map((n) => n.trim())) {
    const chip = document.createElement("sup");
    chip.className = "cite";
    chip.dataset.marker = `[${number}]`;
    chip.textContent = number;
    chip.tabIndex = 0;
    chip.setAttribute("role", "button");
    chip.setAttribute("aria-label", `Source ${number}`);
    group.append(chip);
  }
  return { node: group, length: match[0].length };
}

function link(rest, links) {
  const match = rest.match(LINK);
  if (!match) return null;
  const href = safeUrl(match[2]);
  if (!links || !href) return { node: document.createTextNode(match[0]), length: match[0].length };
  const a = anchor(href);
  appendInline(a, match[1], false);
  return { node: a, length: match[0].length };
}

function bareUrl(rest) {
  const match = rest.match(BARE_URL);
  const href = match && safeUrl(match[0]);
  if (!href) return null;
  const a = anchor(href);
  a.textContent = match[0];
  return { node: a, length: match[0].length };
}

function strongOrEmphasis(rest, links) {
  const both = rest.match(STRONG_EM);
  if (both) {
    const strong = document.createElement("strong");
    strong.append(wrap("em", both[2], 0, links).node);
    return { node: strong, length: both[0].length };
  }
  const strong = rest.match(STRONG);
  if (strong) return wrap("strong", strong[2], strong[0].length, links);
  const em = rest.match(EMPHASIS);
  if (em) return wrap("em", em[2], em[0].length, links);
  return null;
}

function wrap(tag, inner, length, links) {
  const el = document.createElement(tag);
  appendInline(el, inner, links);
  return { node: el, length };
}

/** The URL as a string when it is absolute http(s), else null (javascript:, data:, relative...). */
function safeUrl(raw) {
  try {
    const url = new URL(raw);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

function anchor(href) {
  const a = document.createElement("a");
  a.href = href;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  return a;
}
