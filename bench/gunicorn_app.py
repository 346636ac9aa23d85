"""The trivial WSGI application the gunicorn side serves (it never gets a
request during the benchmark; it only has to load)."""


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Awesome work!\n"]
