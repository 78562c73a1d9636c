local policy = { name = "errors" }
function policy.eligible(offer, customer, session)
  if offer.kind == "module" then return nil end
  return pcall(function() return customer.attrs.visits > 10 end)
end
function policy.score(offer, customer, session)
  if offer.id == "winback_20" then error({ code = 1 }) end
  if offer.id == "email_only" then return "12" end
  local x = tonumber(customer.attrs.visits) or 0
  return x / 0 ~= x / 0 and 0 or nbx.clamp(x, 0, 1), nil
end
return policy
