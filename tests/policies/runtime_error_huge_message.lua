-- expect: fallback runtime: xxxxxxxx
-- Raises a 1 MB message: the record truncates it.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "runtime_error_huge_message" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    error(string.rep('x', 1e6))
  end
  return offer.margin
end

return policy
