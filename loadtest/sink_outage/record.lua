-- wrk script: writes the click id of every 302 to $OUT_DIR/ids-<thread>.txt (line-buffered).
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end

function init(args)
  local dir = os.getenv("OUT_DIR") or "."
  file = io.open(dir .. "/ids-" .. id .. ".txt", "w")
  file:setvbuf("line")
  wrk.headers["User-Agent"] = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 305.0.0.0"
end

function response(status, headers, body)
  if status == 302 then
    local loc = headers["Location"] or headers["location"] or ""
    local cid = string.match(loc, "cl_click=([0-9a-f%-]+)")
    if cid then file:write(cid, "\n") end
  end
end
