"""Serving a fitted run to other programs.

- :mod:`recvae.serving.server`: ``create_app`` / ``serve``, JSON endpoints over a
  :class:`recvae.runs.Run` (FastAPI + uvicorn, the ``serve`` extra), micro-batching
  concurrent requests into one scoring call (:mod:`recvae.serving.batching`); the request and
  response bodies are in :mod:`recvae.serving.schemas`, the run served, its fallback for users
  without history and the reload that swaps runs in :mod:`recvae.serving.service`.
- :mod:`recvae.serving.onnx_export`: ``export_onnx``, a fitted model's fold-in scorer
  (item indices + CSR offsets + weights -> scores) as an ONNX graph for onnxruntime
  (the ``onnx`` extra).

Nothing below this room imports it; it imports runs, models and data.
"""
