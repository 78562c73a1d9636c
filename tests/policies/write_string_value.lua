-- expect: fallback runtime: attempt to index
-- Tries: local s = 'abc'; s.len = 1
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "write_string_value" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local s = 'abc'; s.len = 1
  end
  return offer.margin
end

return policy
