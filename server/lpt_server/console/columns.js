// The column names of a training file, read in the browser from its first 64 KiB:
// CSV (a quoted header cell may hold commas or quotes), TSV, or JSONL (the keys of the first object).

const HEAD_BYTES = 64 * 1024;

export function formatOf(name, firstLine) {
  const ext = (name.match(/\.([^.]+)$/) || [])[1]?.toLowerCase();
  if (ext === "csv" || ext === "tsv" || ext === "jsonl") return ext;
  if (ext === "json" || firstLine.trimStart().startsWith("{")) return "jsonl";
  return firstLine.includes("\t") ? "tsv" : "csv";
}

/** The cells of the first record of CSV text (RFC 4180 quoting; a quoted cell may span lines). */
export function csvHeader(text, delimiter = ",") {
  const cells = [];
  let cell = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { cell += '"'; i++; }
      else if (c === '"') quoted = false;
      else cell += c;
    } else if (c === '"' && cell === "") quoted = true;
    else if (c === delimiter) { cells.push(cell); cell = ""; }
    else if (c === "\n" || c === "\r") break;
    else cell += c;
  }
  cells.push(cell);
  return cells.map((s) => s.trim());
}

/** Column names of `text` (the start of a file) in `format`; throws Error naming the problem. */
export function columnsOf(text, format) {
  text = text.replace(/^\ufeff/, "");
  if (format === "jsonl") {
    const line = text.split(/\r?\n/).find((l) => l.trim());
    if (!line) throw new Error("the file is empty");
    let row;
    try { row = JSON.parse(line); } catch (_) { throw new Error("the first line is not a JSON object"); }
    if (!row || typeof row !== "object" || Array.isArray(row)) throw new Error("the first line is not a JSON object");
    return Object.keys(row);
  }
  if (!text.trim()) throw new Error("the file is empty");
  return csvHeader(text, format === "tsv" ? "\t" : ",").filter((c) => c !== "");
}

/** Read a File's header: {format, columns}. */
export async function readColumns(file) {
  const text = await file.slice(0, HEAD_BYTES).text();
  const format = formatOf(file.name, text.split(/\r?\n/, 1)[0] || "");
  return { format, columns: columnsOf(text, format) };
}
