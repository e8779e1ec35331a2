// Parse an AsyncAPI document with the AsyncAPI project's parser; print its diagnostics as JSON lines
// ({severity, code, message, path}; severity 0 error, 1 warning, 2 information, 3 hint). Exit 1 when the
// document does not parse (any error), 0 otherwise.
import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";

const path = process.argv[2];
const { document, diagnostics } = await new Parser().parse(await readFile(path, "utf8"), { source: path });
for (const d of diagnostics) {
  console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path.join("/") }));
}
process.exit(document === undefined ? 1 : 0);
