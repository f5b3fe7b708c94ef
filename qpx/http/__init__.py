"""Strict HTTP/1.1: request and response heads (llhttp via httptools, plus the RFC 9112
rules it leaves to us), chunked coding, bodies in transit, header lists."""
