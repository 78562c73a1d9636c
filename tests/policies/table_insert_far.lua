-- expect: fallback runtime: position out of bounds
-- table.insert at position -2^31: LuaJIT shifts elements one by one towards
-- it, in C, for 16 seconds, and the decision came back as a normal one.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "table_insert_far" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    table.insert({}, -2^31, 1)
  end
  return offer.margin
end

return policy
