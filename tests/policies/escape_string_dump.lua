-- expect: fallback runtime: attempt to call field 'dump'
-- load(string.dump(f)) would load unverified bytecode: string.dump is not there.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "escape_string_dump" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    local b = string.dump(function() return 1 end)
  end
  return offer.margin
end

return policy
