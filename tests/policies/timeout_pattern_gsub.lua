-- expect: fallback timeout
-- The same explosion through gsub and method syntax.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "timeout_pattern_gsub" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local s = ('x'):rep(2000); s = s:gsub('.-.-.-.-.-y', ''); return #s
  end
  return offer.margin
end

return policy
