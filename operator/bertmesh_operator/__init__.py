"""bertmesh operator: reconciles ModelDeployments into Deployments, Services, HPAs and Istio objects."""
