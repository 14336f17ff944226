// The React front end's view of the API: every route called with a correct
// body through a client generated from the committed openapi/openapi.json.
// It only has to type-check (`tsc --strict`); it is never run. A route,
// body or operationId the generator reads wrongly makes this fail to compile.
import createClient from "openapi-fetch";
import type { components, paths } from "./schema";

type Address = components["schemas"]["Address"];

const api = createClient<paths>({ baseUrl: "http://127.0.0.1:8080" });
const id = "0190f0f0-0000-7000-8000-000000000000";
const address: Address = {
  name: "Empress Products",
  line1: "12 Dock Road",
  city: "Rotterdam",
  postal_code: "3011 AA",
  country: "NL",
};

export async function everyRoute(): Promise<void> {
  await api.GET("/healthz");
  await api.GET("/readyz");
  await api.GET("/metrics");

  const customer = await api.POST("/v1/customers", { body: { name: "Empress Products" } });
  const customerName: string | undefined = customer.data?.name;
  await api.GET("/v1/customers", { params: { query: { limit: 20 } } });
  await api.GET("/v1/customers/{id}", { params: { path: { id } } });
  const key = await api.POST("/v1/customers/{id}/api-keys", { params: { path: { id } } });
  const token: string | undefined = key.data?.token;
  await api.GET("/v1/customers/{id}/api-keys", { params: { path: { id } } });
  await api.DELETE("/v1/customers/{id}/api-keys/{key_id}", {
    params: { path: { id, key_id: id } },
  });

  const order = await api.POST("/v1/orders", {
    params: { header: { "Idempotency-Key": "po-2026-0042" } },
    body: {
      reference: "PO-2026-0042",
      pickup: address,
      delivery: { ...address, name: "Jane Doe", country: "DE" },
      parcels: [{ weight_grams: 1200, length_mm: 300, width_mm: 200, height_mm: 100 }],
    },
  });
  const version: number | undefined = order.data?.version;
  await api.GET("/v1/orders", { params: { query: { status: "pending", limit: 20 } } });
  await api.GET("/v1/orders/{id}", { params: { path: { id } } });
  await api.POST("/v1/orders/{id}/status", {
    params: { path: { id }, header: { "If-Match": '"1"', "Idempotency-Key": "move-1" } },
    body: { status: "confirmed", location: "Rotterdam hub" },
  });
  const tracked = await api.POST("/v1/orders/{id}/tracking", {
    params: { path: { id }, header: { "If-Match": '"2"', "Idempotency-Key": "scan-1" } },
    body: { location: "Antwerp depot", note: "sorted", eta: "2026-12-24T16:00:00Z" },
  });
  const eta: string | null | undefined = tracked.data?.eta;
  const seen: string | null | undefined = tracked.data?.last_location;
  await api.POST("/v1/orders/{id}/tracking", { params: { path: { id } }, body: { location: "Ghent", eta: null } });
  await api.PATCH("/v1/orders/{id}", {
    params: { path: { id }, header: { "If-Match": '"3"' } },
    body: { delivery: { ...address, name: "Northwind Depot" }, notes: null },
  });
  const history = await api.GET("/v1/orders/{id}/events", { params: { path: { id } } });
  const kinds: string[] | undefined = history.data?.data.map((e) => e.type);
  await api.GET("/v1/events", { params: { query: { limit: 100, wait: 30 } } });

  await api.GET("/v1/orders/{id}/deliveries", { params: { path: { id }, query: { limit: 20 } } });

  const hook = await api.POST("/v1/webhooks", {
    body: {
      url: "https://partner.example.com/hooks",
      event_types: ["order.status_changed", "order.tracking_updated", "delivery.failed"],
      statuses: ["delivered", "exception"],
      rate_limit_per_second: 50,
      headers: { "X-Partner-Id": "acme-42" },
    },
  });
  const limit: number | null | undefined = hook.data?.rate_limit_per_second;
  const secret: string | undefined = hook.data?.secret ?? undefined;
  const hooks = await api.GET("/v1/webhooks");
  const urls: string[] | undefined = hooks.data?.data.map((w) => w.url);
  await api.GET("/v1/webhooks/{id}", { params: { path: { id } } });
  await api.PATCH("/v1/webhooks/{id}", { params: { path: { id } }, body: { enabled: true, statuses: null } });
  await api.DELETE("/v1/webhooks/{id}", { params: { path: { id } } });
  await api.GET("/v1/webhooks/{id}/secret", { params: { path: { id } } });
  await api.POST("/v1/webhooks/{id}/secret/rotate", { params: { path: { id } }, body: {} });
  await api.POST("/v1/webhooks/{id}/test", { params: { path: { id } } });
  await api.GET("/v1/webhooks/{id}/deliveries", {
    params: { path: { id }, query: { status: "failed" } },
  });
  await api.GET("/v1/webhooks/{id}/deliveries/{delivery_id}/attempts", {
    params: { path: { id, delivery_id: id } },
  });
  await api.POST("/v1/webhooks/{id}/deliveries/{delivery_id}/retry", {
    params: { path: { id, delivery_id: id } },
  });
  const recovered = await api.POST("/v1/webhooks/{id}/recover", {
    params: { path: { id } },
    body: { since: "2026-11-26T08:00:00Z" },
  });
  const count: number | undefined = recovered.data?.deliveries;
  const types = await api.GET("/v1/event-types");
  const names: string[] | undefined = types.data?.data.map((t) => t.type);

  const session = await api.POST("/v1/customers/{id}/portal-sessions", {
    params: { path: { id } },
    body: { capabilities: ["endpoints:write"], expires_in: 3600 },
  });
  const link: string | undefined = session.data?.url;
  await api.DELETE("/v1/customers/{id}/portal-sessions", { params: { path: { id } } });

  await api.GET("/v1/admin/outbox/parked");
  await api.POST("/v1/admin/outbox/parked/{event_id}/retry", {
    params: { path: { event_id: id } },
  });

  void [customerName, token, version, secret, urls, limit, count, names, link, eta, seen, kinds];
}
