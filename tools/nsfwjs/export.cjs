// Writes nsfwjs's bundled MobileNetV2 as a TF.js layers model (model.json + weights.bin) into a folder.
// nsfwjs ships each model as UMD JavaScript modules: model.min.js exports the model.json object and each
// group1-shardNofM.min.js exports one weight shard as a base64 string. Usage: node export.cjs OUT_DIR
"use strict";
const fs = require("fs");
const path = require("path");

const out = process.argv[2];
if (!out) {
  console.error("usage: node export.cjs OUT_DIR");
  process.exit(2);
}
// the node_modules folder holding the pinned packages: NSFWJS_MODULES, else the one beside this script
const modules = process.env.NSFWJS_MODULES || path.join(__dirname, "node_modules");
const root = path.join(modules, "nsfwjs");
const versionOf = (name) => JSON.parse(fs.readFileSync(path.join(modules, name, "package.json"), "utf8")).version;
const folder = path.join(root, "dist", "models", "mobilenet_v2");
const model = require(path.join(folder, "model.min.js"));
const shards = [];
for (const group of model.weightsManifest) {
  for (const shard of group.paths) {
    shards.push(Buffer.from(require(path.join(folder, `${shard}.min.js`)), "base64"));
  }
}
fs.mkdirSync(out, { recursive: true });
fs.writeFileSync(path.join(out, "model.json"), JSON.stringify(model));
fs.writeFileSync(path.join(out, "weights.bin"), Buffer.concat(shards));
const version = versionOf("nsfwjs");
const tfjs = versionOf("@tensorflow/tfjs");
fs.writeFileSync(path.join(out, "versions.json"), JSON.stringify({ nsfwjs: version, "@tensorflow/tfjs": tfjs }));
console.log(`nsfwjs ${version} MobileNetV2 written to ${out}`);
