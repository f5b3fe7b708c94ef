-- wrk script: absolute-form requests through a forward proxy.
-- ORIGIN=host:port  OBJ=/path  BROWSER=1 adds 11 browser-like request headers.
local origin = os.getenv("ORIGIN")
local obj = os.getenv("OBJ") or "/100b"
wrk.method = "GET"
wrk.path = "http://" .. origin .. obj
wrk.headers["Host"] = origin
if os.getenv("CLOSE") == "1" then
  wrk.headers["Connection"] = "close"
end
if os.getenv("BROWSER") == "1" then
  wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
  wrk.headers["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
  wrk.headers["Accept-Language"] = "en-US,en;q=0.5"
  wrk.headers["Accept-Encoding"] = "gzip, deflate, br"
  wrk.headers["Connection"] = "keep-alive"
  wrk.headers["Upgrade-Insecure-Requests"] = "1"
  wrk.headers["Sec-Fetch-Dest"] = "document"
  wrk.headers["Sec-Fetch-Mode"] = "navigate"
  wrk.headers["Sec-Fetch-Site"] = "none"
  wrk.headers["Sec-Fetch-User"] = "?1"
  wrk.headers["Cookie"] = "session=0123456789abcdef0123456789abcdef; theme=dark"
end
