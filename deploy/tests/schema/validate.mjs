// Validates Kubernetes manifests against the API's JSON schemas, offline: the models of the
// npm packages kubernetes-models (core, apps, ...) and @kubernetes-models/prometheus-operator
// (PodMonitor) carry the OpenAPI schemas and an ajv validator (types, required fields, enums,
// formats; unknown fields are not reported). Used by ../check_k8s_schema.sh.
// Usage: node validate.mjs FILE.yaml...   (exit 1 if any object is invalid)
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

async function modelFor(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const path = group === "monitoring.coreos.com"
    ? `@kubernetes-models/prometheus-operator/${group}/${version}/${kind}`
    : group === "" ? `kubernetes-models/${version}/${kind}`
    : `kubernetes-models/${group}/${version}/${kind}`;
  const mod = await import(path);
  return mod[kind] ?? mod.default;
}

let invalid = 0, checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
    if (doc.errors.length) { invalid++; console.log(`INVALID ${file}: ${doc.errors[0].message}`); continue; }
    const obj = doc.toJS();
    if (obj == null) continue;
    const what = `${file}: ${obj.kind}/${obj.metadata?.name}`;
    if (obj.kind === "Kustomization") continue;  // kustomize's own file, not an API object
    let Model;
    try {
      Model = await modelFor(obj.apiVersion, obj.kind);
    } catch (e) {
      invalid++; console.log(`INVALID ${what}: no schema for ${obj.apiVersion} ${obj.kind}`); continue;
    }
    try {
      new Model(obj).validate();
      checked++; console.log(`ok ${what}`);
    } catch (e) {
      invalid++; console.log(`INVALID ${what}: ${e.message}`);
    }
  }
}
console.log(`${checked} valid, ${invalid} invalid`);
process.exit(invalid || checked === 0 ? 1 : 0);
