-- expect: fallback runtime: attempt to write field 'free_shipping'
-- Tries: customer.propensity.free_shipping = 1
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "write_customer_map" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    customer.propensity.free_shipping = 1
  end
  return offer.margin
end

return policy
