-- expect: fallback runtime: malformed pattern
-- A malformed pattern.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "runtime_pattern_malformed" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    return string.find('abc', '[a')
  end
  return offer.margin
end

return policy
