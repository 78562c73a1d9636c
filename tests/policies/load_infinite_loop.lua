-- expect: load_error: load time limit
-- The top level never returns.
while true do end

return { name = "load_infinite_loop", score = function(offer) return offer.margin end }
