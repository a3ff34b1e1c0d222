"""The dSprites data layer: factors, official files, the generator and causal variants."""
