// Must NOT compile: a customer body sent to create an order, and a webhook
// list read as customers. The generator typed these wrongly when
// operationIds repeated; `scripts/test` fails if this file type-checks.
import createClient from "openapi-fetch";
import type { paths } from "./schema";

const api = createClient<paths>({ baseUrl: "http://127.0.0.1:8080" });

export async function wrong(): Promise<void> {
  await api.POST("/v1/orders", { body: { name: "not an order" } });
  const hooks = await api.GET("/v1/webhooks");
  const names: string[] | undefined = hooks.data?.data.map((w) => w.name);
  void names;
}
