-- expect: fallback timeout
-- Backtracking pattern: ran over 20 s with LuaJIT's own string.find.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "timeout_pattern_find" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return string.find(('a'):rep(3000), '.-.-.-.-b$') or 1
  end
  return offer.margin
end

return policy
