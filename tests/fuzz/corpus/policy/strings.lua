local policy = { name = "strings", params = { words = { "a", "b" } } }
local lookup = {}
for i, w in ipairs(policy.params.words) do lookup[w] = i end
function policy.eligible(offer, customer, session)
  return (offer.category or ""):find("^app") == nil or customer.consent.email ~= false
end
function policy.score(offer, customer, session)
  local s = string.format("%s|%s|%d", offer.id, session.placement, nbx.len(offer.id))
  local n = 0
  for w in s:gmatch("[%a_]+") do n = n + (lookup[w] or 1) end
  s = s:gsub("_", "-"):upper():rep(2, ","):sub(2, -2):reverse()
  local t = {}
  for i = 1, 5 do table.insert(t, s:byte(i) or 0) end
  table.sort(t, function(a, b) return a > b end)
  return n + t[1] / 1000 + math.random() * 1e-9, nbx.expected_margin(customer, offer)
end
return policy
