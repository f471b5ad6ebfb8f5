"""The exported model in a web page: ONNX Runtime Web on the user's camera (``hairseg web serve``).

``server``: the static server (page, model, ONNX Runtime Web, cross-origin isolation headers);
``ortweb``: the pinned onnxruntime-web release, its vendored WASM build and the WebGPU build cache;
``static/``: the page (``app.js`` mirrors hairseg_core.deploy.inference / .temporal / .coloring in JavaScript).
"""
