-- expect: fallback runtime: function replacements are not allowed
-- gsub with a function that calls gsub: recursion through C crashes LuaJIT.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "c_recursion_gsub" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local function again(c) return (c:gsub('.', again)) end
    return (('abc'):gsub('.', again))
  end
  return offer.margin
end

return policy
