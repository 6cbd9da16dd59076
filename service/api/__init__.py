"""The HTTP API (FastAPI): the app (app.py) with its job, event, circuit and watch routes, response
bodies and views, export formats, the body-size limit and callback delivery."""
