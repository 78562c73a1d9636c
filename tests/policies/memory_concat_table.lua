-- expect: fallback memory: table.concat's result
-- table.concat of a big table: stopped as soon as the result is longer than
-- a policy's strings may be, not after building all of it.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "memory_concat_table" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local t = {}
    for i = 1, 50000 do t[i] = i end
    return #table.concat(t, ",")
  end
  return offer.margin
end

return policy
