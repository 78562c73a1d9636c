-- expect: fallback runtime: attempt to call field 'randomseed'
-- Reseeding would make decisions depend on earlier ones.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "escape_randomseed" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    math.randomseed(1)
  end
  return offer.margin
end

return policy
