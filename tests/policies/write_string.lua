-- expect: fallback runtime: attempt to write field 'rep'
-- Tries: string.rep = nil
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "write_string" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    string.rep = nil
  end
  return offer.margin
end

return policy
