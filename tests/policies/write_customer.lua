-- expect: fallback runtime: attempt to write field 'ltv'
-- Tries: customer.ltv = 0
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "write_customer" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    customer.ltv = 0
  end
  return offer.margin
end

return policy
