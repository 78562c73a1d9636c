-- expect: fallback timeout
-- Backtracking pattern: ran over 20 s with LuaJIT's own string.find.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "timeout_pattern_find" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    return string.find(('a'):rep(3000), '.-.-.-.-b$') or 1
  end
  return offer.margin
end

return policy
