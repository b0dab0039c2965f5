"""HTTP resources: each module owns a RouteTableDef and knows HTTP, nothing deeper."""
