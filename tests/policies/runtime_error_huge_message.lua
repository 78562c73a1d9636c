-- expect: fallback runtime: xxxxxxxx
-- Raises the longest message a policy can build (4 KiB): the record
-- truncates it.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "runtime_error_huge_message" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    error(string.rep('x', 4000) .. string.rep('y', 96))
  end
  return offer.margin
end

return policy
