-- expect: fallback runtime: boom
-- Raises a plain string.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "runtime_error_string" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    error('boom')
  end
  return offer.margin
end

return policy
