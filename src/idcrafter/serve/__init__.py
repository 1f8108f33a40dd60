"""Serving: a web page and a JSON API on the one pipeline (`idcrafter serve`).

Modules:
- `limits`: what a request may carry (sizes, pixel counts, image types, settings bounds) and
  the parser that turns a multipart form into a checked `GenerateRequest`, or a `RequestError`
  with its HTTP status.
- `runner`: a loaded model (`ModelSlot`): the one place where the server calls the pipeline and
  the identity scorer (the SpriteWorld judge, or real-face models when their weights exist).
- `jobs`: the bounded queue, one worker thread per device, progress, cancellation, result
  expiry, and a clean stop.
- `app`: the FastAPI application (routes, JSON errors, body-size limit) and the static page.
- `server`: models -> slots -> manager -> app (`build`), uvicorn settings, `ServerThread`
  (the app on a loopback port inside the current process, for tests and scripts).
- `client`: a small Python client of the JSON API (used by the load script and tests).
- `cli`: the `idcrafter serve` command.

Gradio was the expected choice for the page; gradio 6.31 needs pillow < 13 while the project
pins pillow 13.0.0, so the page is a static HTML/JS file served by the same FastAPI app that
serves the API (docs/serving.md).
"""
