-- expect: fallback runtime: attempt to write field 'ltv'
-- Tries: customer.ltv = 0
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "write_customer" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    customer.ltv = 0
  end
  return offer.margin
end

return policy
