// Checks AsyncAPI documents with the official tools: the AsyncAPI 3.0.0 JSON Schema from
// @asyncapi/specs (with Ajv) and @asyncapi/parser (which also runs the AsyncAPI rules).
// Usage: node validate.mjs FILE... ; prints one JSON report per file on a line of its own.
// JSON files are checked by both; YAML files by the parser (the schema needs an object).
import { readFileSync } from "node:fs";
import Ajv from "ajv";
import addFormats from "ajv-formats";
import specs from "@asyncapi/specs";
import { Parser } from "@asyncapi/parser";

const ajv = new Ajv({ allErrors: true, strict: false });
addFormats(ajv);
// The schema embeds the JSON Schema draft-07 meta-schema, which Ajv already has built in.
const schema = structuredClone(specs.schemas["3.0.0"]);
delete schema.definitions["http://json-schema.org/draft-07/schema"];
const validate = ajv.compile(schema);
const parser = new Parser();
const severities = ["error", "warning", "info", "hint"];

for (const file of process.argv.slice(2)) {
  const text = readFileSync(file, "utf8");
  const report = { file, schemaErrors: null, diagnostics: [], parsed: false };
  if (file.endsWith(".json")) {
    validate(JSON.parse(text));
    report.schemaErrors = (validate.errors || []).map(
      (e) => `${e.instancePath || "/"} ${e.message} ${JSON.stringify(e.params)}`,
    );
  }
  const { document, diagnostics } = await parser.parse(text);
  report.parsed = document !== undefined;
  report.diagnostics = diagnostics.map((d) => ({
    severity: severities[d.severity] ?? String(d.severity),
    code: d.code,
    message: d.message,
    path: (d.path || []).join("/"),
  }));
  if (document) {
    report.channels = document.channels().all().map((c) => c.address());
    report.operations = document.operations().all().map((o) => `${o.action()} ${o.id()}`);
  }
  console.log(JSON.stringify(report));
}
