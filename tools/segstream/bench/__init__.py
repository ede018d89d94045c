"""segstream-bench: how fast the server serves, next to what the same model costs without serving.

One run measures, on the same model file, inference size, execution provider and thread count:

1. served: N concurrent gRPC streams of M JPEG frames through a real `segstream-server`
   (ORDERED or LATEST, optionally paced like a camera), client-side latency per frame;
2. raw: a plain `onnxruntime.InferenceSession` on the model's float input, nothing else;
3. pipeline: decode, resize, the serving graph (`OrtModel`, as the server runs it) and the
   server's postprocess, frame after frame in one loop: what a frame costs without any serving.

The ratios served/raw and served/pipeline say what serving costs. Modules: `frames` (the test
frames), `served` (server process and stream load), `inprocess` (raw and pipeline loops),
`cpu` (who kept the cores busy during each phase), `report` (statistics, ratios, table, JSON),
`options` (the argument parser and its checks), `run` (one run: server, in-process loops, report),
`cli` (the command line's entry point).
"""
