-- expect: fallback runtime: attempt to write field 'propensity'
-- Tries: nbx.propensity = function() return 1 end
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "write_nbx" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    nbx.propensity = function() return 1 end
  end
  return offer.margin
end

return policy
