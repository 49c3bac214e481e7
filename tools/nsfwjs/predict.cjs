// Runs nsfwjs (the npm original, @tensorflow/tfjs on its pure-JS "cpu" backend) on raw inputs, for the test
// that proves the ONNX conversion equal. Usage: node predict.cjs REQUEST.json ANSWER.json, where the request is
//   {"batch": {"path": "x.f32", "shape": [N, 224, 224, 3]},   float32 little-endian, fed to the model as is
//    "images": [{"path": "a.rgb", "height": H, "width": W}]}  uint8 RGB pixels, fed through nsfwjs's infer()
// and ANSWER.json gets {"batch": [[5 probabilities] x N], "images": [[5 probabilities] per image]}.
"use strict";
const fs = require("fs");
const path = require("path");

const modules = process.env.NSFWJS_MODULES || path.join(__dirname, "node_modules");
const tf = require(path.join(modules, "@tensorflow", "tfjs"));
const nsfwjs = require(path.join(modules, "nsfwjs"));

async function main() {
  const request = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  await tf.setBackend("cpu");
  await tf.ready();
  const model = await nsfwjs.load("MobileNetV2");
  const answer = { backend: tf.getBackend(), batch: [], images: [] };
  if (request.batch) {
    const bytes = fs.readFileSync(request.batch.path);
    const values = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    const output = tf.tidy(() => model.model.predict(tf.tensor4d(values, request.batch.shape)));
    answer.batch = await output.array();
    output.dispose();
  }
  for (const image of request.images || []) {
    const pixels = new Int32Array(fs.readFileSync(image.path));
    const input = tf.tensor3d(pixels, [image.height, image.width, 3], "int32");
    const output = model.infer(input);
    answer.images.push(Array.from(await output.data()));
    output.dispose();
    input.dispose();
  }
  fs.writeFileSync(process.argv[3], JSON.stringify(answer));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
