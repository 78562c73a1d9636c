-- expect: fallback runtime: function replacements are not allowed
-- gsub with a function that calls gsub: recursion through C crashes LuaJIT.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "c_recursion_gsub" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    local function again(c) return (c:gsub('.', again)) end
    return (('abc'):gsub('.', again))
  end
  return offer.margin
end

return policy
