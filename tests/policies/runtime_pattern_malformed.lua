-- expect: fallback runtime: malformed pattern
-- A malformed pattern.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "runtime_pattern_malformed" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return string.find('abc', '[a')
  end
  return offer.margin
end

return policy
