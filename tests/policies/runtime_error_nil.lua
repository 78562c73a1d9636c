-- expect: fallback runtime: error object is a nil
-- Raises nil.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "runtime_error_nil" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    error()
  end
  return offer.margin
end

return policy
