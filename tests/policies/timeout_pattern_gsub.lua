-- expect: fallback timeout
-- The same explosion through gsub and method syntax.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "timeout_pattern_gsub" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    local s = ('x'):rep(2000); s = s:gsub('.-.-.-.-.-y', ''); return #s
  end
  return offer.margin
end

return policy
