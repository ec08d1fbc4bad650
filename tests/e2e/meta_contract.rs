//! The metadata-store contract (`shared::service::meta_contract`) against the DynamoDB adapter
//! on the local stack's DynamoDB Local: the same cases the memory store passes in the unit tests,
//! so the two stores cannot drift apart unnoticed.
//!
//! Each case gets a table of its own, created from the stack's table as described by DynamoDB
//! (keys, attributes, index), so the definition stays the template's and the cases' counters
//! and listings are not disturbed by the tests running beside them.

use aws_sdk_dynamodb::types::{BillingMode, GlobalSecondaryIndex, KeySchemaElement, Projection, TableDescription};
use shared::aws::dynamo::DynamoMeta;
use shared::service::meta_contract::{self, StoreFactory};
use shared::service::tokens;

use crate::faults::Stack;

struct FreshTables {
    client: aws_sdk_dynamodb::Client,
    template: TableDescription,
    created: std::sync::Mutex<Vec<String>>,
}

impl FreshTables {
    async fn of(stack: &Stack) -> anyhow::Result<Self> {
        let described = stack.dynamodb.describe_table().table_name(&stack.env["TABLE_NAME"]).send().await?;
        let template = described.table.ok_or_else(|| anyhow::anyhow!("the stack's table is not described"))?;
        Ok(FreshTables { client: stack.dynamodb.clone(), template, created: Default::default() })
    }

    async fn create(&self) -> anyhow::Result<String> {
        let name = format!("{}-contract-{}", self.template.table_name().unwrap_or("pprl"), &tokens::generate()[..12]);
        let key_schema = |keys: &[KeySchemaElement]| keys.to_vec();
        let mut request = self
            .client
            .create_table()
            .table_name(&name)
            .billing_mode(BillingMode::PayPerRequest)
            .set_attribute_definitions(Some(self.template.attribute_definitions().to_vec()))
            .set_key_schema(Some(key_schema(self.template.key_schema())));
        for index in self.template.global_secondary_indexes() {
            let projection = index.projection().cloned().unwrap_or_else(|| Projection::builder().build());
            request = request.global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .set_index_name(index.index_name().map(String::from))
                    .set_key_schema(Some(key_schema(index.key_schema())))
                    .projection(projection)
                    .build()?,
            );
        }
        request.send().await?;
        self.created.lock().expect("names").push(name.clone());
        Ok(name)
    }
}

impl StoreFactory for FreshTables {
    type Store = DynamoMeta;
    async fn fresh(&self) -> DynamoMeta {
        let table = self.create().await.expect("a fresh table on DynamoDB Local");
        DynamoMeta::new(self.client.clone(), table)
    }
}

#[tokio::test]
async fn the_dynamodb_adapter_keeps_the_metadata_store_contract() -> anyhow::Result<()> {
    let stack = Stack::connect().await;
    let tables = FreshTables::of(&stack).await?;
    meta_contract::check(&tables).await;
    for name in tables.created.lock().expect("names").drain(..) {
        tables.client.delete_table().table_name(name).send().await?;
    }
    Ok(())
}
