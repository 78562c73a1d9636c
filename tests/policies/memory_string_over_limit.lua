-- expect: fallback memory: string.rep would be 3221225470 bytes
-- string.rep asked for 1 GiB with a separator: refused before any work,
-- as a memory fault (issue: it was reported as a runtime error).
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "memory_string_over_limit" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local s = string.rep("x", 2^30, "yy")
  end
  return offer.margin
end

return policy
