-- expect: load_error: memory limit
-- The top level allocates without bound.
local s = 'x'
while true do s = s .. s end

return { name = "load_memory_bomb", score = function(offer) return offer.margin end }
