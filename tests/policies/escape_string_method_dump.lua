-- expect: fallback runtime: attempt to call method 'dump'
-- Reaches string.dump through a string's metatable.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_string_method_dump" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local b = ('x'):dump()
  end
  return offer.margin
end

return policy
