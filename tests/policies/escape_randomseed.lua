-- expect: fallback runtime: attempt to call field 'randomseed'
-- Reseeding would make decisions depend on earlier ones.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_randomseed" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    math.randomseed(1)
  end
  return offer.margin
end

return policy
