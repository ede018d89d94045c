// A segstream client built only from the .proto: streams JPEG files as frames and decodes every mask.
// Usage: node client.js HOST:PORT MASK_ENCODING(raw|png) IMAGE...
// Prints one JSON object: per frame its id, capture time, mask size and a sha256 of the decoded class indices.
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const { PNG } = require("pngjs");

const [target, maskEncoding, ...images] = process.argv.slice(2);
const protoRoot = path.resolve(__dirname, "../../../protos");
const definition = protoLoader.loadSync("segstream/v1/segmentation.proto", {
  includeDirs: [protoRoot],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: false,
});
const segstream = grpc.loadPackageDefinition(definition).segstream.v1;
const client = new segstream.Segmentation(target, grpc.credentials.createInsecure());

function decodeMask(mask) {
  const width = mask.width;
  const height = mask.height;
  let labels;
  if (mask.encoding === "MASK_ENCODING_PNG") {
    const png = PNG.sync.read(mask.data, { skipRescale: true });
    if (png.width !== width || png.height !== height) throw new Error("PNG size mismatch");
    // pngjs expands to RGBA; a grey PNG has the class index in every colour channel.
    labels = Buffer.alloc(width * height);
    for (let i = 0; i < width * height; i++) labels[i] = png.data[i * 4];
  } else {
    labels = Buffer.from(mask.data);
    if (labels.length !== width * height) throw new Error("raw mask size mismatch");
  }
  return { width, height, sha256: crypto.createHash("sha256").update(labels).digest("hex") };
}

const call = client.Segment({ deadline: Date.now() + 60000 });
const results = [];
call.on("data", (response) => {
  if (response.error) {
    results.push({ frame_id: response.frame_id, error: response.error.message });
    return;
  }
  results.push({
    frame_id: response.frame_id,
    seconds: response.capture_time.seconds,
    nanos: response.capture_time.nanos,
    ...decodeMask(response.label_mask),
  });
});
call.on("error", (err) => {
  console.error(`stream failed: ${err.code} ${err.details}`);
  process.exit(1);
});
call.on("end", () => {
  console.log(JSON.stringify({ results }));
  client.close();
});

call.write({
  config: {
    outputs: ["OUTPUT_LABEL_MASK"],
    mask_encoding: maskEncoding === "png" ? "MASK_ENCODING_PNG" : "MASK_ENCODING_RAW",
    policy: "FRAME_POLICY_ORDERED",
  },
});
images.forEach((file, i) => {
  call.write({
    frame: {
      frame_id: String(1000 + i),
      capture_time: { seconds: String(1700000000 + i), nanos: 123456789 },
      encoded: { data: fs.readFileSync(file) },
    },
  });
});
call.end();
