-- expect: fallback runtime: attempt to index
-- Reads through a missing field.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "runtime_index_nil" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    return customer.attrs.nope.deeper
  end
  return offer.margin
end

return policy
